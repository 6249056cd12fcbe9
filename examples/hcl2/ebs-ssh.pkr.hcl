packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "ssh_username" {
  type    = string
  default = "ec2-user"
}

# The HCL2 twin of examples/ebs-ssh.json, written with blocks: filter and tag blocks
# fold into their maps, build.* stays for the steps to render.
source "amazon-ebs" "amazon-ebs" {
  # build.* is rendered by the steps, with the source AMI known.
  ami_description                       = "Built from ${build.SourceAMIName} (${build.SourceAMI}) in ${build.BuildRegion}"
  ami_name                              = "amiflow-ssh-{{timestamp}}"
  associate_public_ip_address           = true
  communicator                          = "ssh"
  instance_type                         = "t3.micro"
  region                                = var.region
  ssh_clear_authorized_keys             = true
  ssh_interface                         = "public_ip"
  ssh_port                              = 22
  ssh_pty                               = false
  ssh_timeout                           = "10m"
  ssh_username                          = var.ssh_username
  temporary_key_pair_type               = "ed25519"
  temporary_security_group_source_cidrs = ["203.0.113.0/24"]

  source_ami_filter {
    filter {
      name  = "name"
      value = "amzn2-ami-hvm-*-x86_64-gp2"
    }
    filter {
      name  = "root-device-type"
      value = "ebs"
    }
    filter {
      name  = "virtualization-type"
      value = "hvm"
    }
    most_recent = true
    owners      = ["amazon"]
  }

  tag {
    key   = "Name"
    value = "amiflow-ssh"
  }

  tag {
    key   = "Base_AMI"
    value = build.SourceAMI
  }
}

build {
  description = "amazon-ebs provisioned over SSH with a temporary ed25519 key pair and security group."
  sources     = ["source.amazon-ebs.amazon-ebs"]

  provisioner "shell" {
    pause_before = "10s"
    inline       = ["echo provisioned over ssh > /tmp/amiflow-ssh"]
  }
}
