packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebs" "amazon-ebs" {
  ami_name      = "amiflow-demo-{{timestamp}}"
  communicator  = "none"
  instance_type = "t3.micro"
  region        = "us-east-1"
  source_ami    = "ami-0f8848d57eb4fe2d2"
}

build {
  description = "The smallest amazon-ebs build: launch moto's Amazon Linux 2 image, no provisioning, make an AMI. `amiflow build examples/ebs-basic.json` runs it against the local emulator."
  sources     = ["source.amazon-ebs.amazon-ebs"]
}
