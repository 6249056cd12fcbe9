packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebs" "amazon-ebs" {
  ami_name            = "amiflow-spot-{{timestamp}}"
  communicator        = "ssh"
  region              = "us-east-2"
  source_ami          = "ami-0f8848d57eb4fe2d2"
  spot_instance_types = ["t3.large", "t3a.large", "m5.large"]
  spot_price          = "auto"
  spot_tags           = {
    Name = "amiflow-spot-request"
    Team = "platform"
  }
  ssh_username = "ec2-user"
}

build {
  description = "amazon-ebs on a spot instance chosen from several types."
  sources     = ["source.amazon-ebs.amazon-ebs"]
}
