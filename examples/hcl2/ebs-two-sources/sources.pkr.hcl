packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

locals {
  # One stamp for every image of the run.
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
  common_tags = {
    Project = "amiflow-demo"
    Version = var.app_version
  }
}

# The base both images start from; the build block names each use of it.
source "amazon-ebs" "base" {
  region        = var.region
  instance_type = "t3.small"

  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-x86_64"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  communicator = "ssh"
  ssh_username = "ec2-user"

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 20
    volume_type           = "gp3"
    delete_on_termination = true
  }

  ami_description = "app ${var.app_version} from {{ .SourceAMIName }}"
  tags            = local.common_tags
}
