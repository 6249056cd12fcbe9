packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebsvolume" "amazon-ebsvolume" {
  communicator    = "none"
  instance_type   = "t3.micro"
  region          = "us-east-1"
  run_volume_tags = {
    Building = "true"
  }
  source_ami = "ami-0f8848d57eb4fe2d2"

  ebs_volumes {
    delete_on_termination = false
    device_name           = "/dev/xvdf"
    snapshot_description  = "dataset snapshot"
    snapshot_tags         = {
      Name = "dataset-snapshot"
    }
    snapshot_users  = ["210987654321"]
    snapshot_volume = true
    tags            = {
      Name   = "dataset"
      Source = "{{ .SourceAMI }}"
    }
    volume_size = 10
    volume_type = "gp3"
  }

  ebs_volumes {
    delete_on_termination = false
    device_name           = "/dev/xvdg"
    tags                  = {
      Name = "scratch"
    }
    volume_size = 125
    volume_type = "st1"
  }
}

build {
  description = "amazon-ebsvolume: launch with data volumes, fill them, keep them (and a snapshot of one)."
  sources     = ["source.amazon-ebsvolume.amazon-ebsvolume"]
}
