packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebs" "amazon-ebs" {
  ami_name             = "amiflow-ssm-{{isotime `2006-01-02-1504`}}"
  communicator         = "ssm"
  iam_instance_profile = "amiflow-ssm-instance"
  imds_support         = "v2.0"
  instance_type        = "t3.small"
  region               = "eu-west-1"
  run_tags             = {
    Purpose = "amiflow build"
  }
  source_ami            = "ami-0f8848d57eb4fe2d2"
  ssm_execution_timeout = "30m"
  ssm_output_s3_bucket  = "my-amiflow-logs"
  ssm_timeout           = "10m"
  subnet_id             = "subnet-0a1b2c3d4e5f60718"

  metadata_options {
    http_endpoint               = "enabled"
    http_put_response_hop_limit = 2
    http_tokens                 = "required"
  }
}

build {
  description = "amazon-ebs provisioned through SSM RunCommand: no inbound port, no key pair. The instance profile must allow SSM (AmazonSSMManagedInstanceCore)."
  sources     = ["source.amazon-ebs.amazon-ebs"]

  provisioner "shell" {
    inline = ["sudo yum -y update", "echo built by amiflow | sudo tee /etc/motd"]
  }
}
