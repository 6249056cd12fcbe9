packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebssurrogate" "amazon-ebssurrogate" {
  ami_architecture        = "x86_64"
  ami_name                = "amiflow-surrogate-ci-{{timestamp}}"
  ami_virtualization_type = "hvm"
  communicator            = "ssh"
  ena_support             = true
  instance_type           = "t3.small"
  region                  = "us-east-1"
  run_volume_tags         = {
    Name = "amiflow-surrogate-volume"
  }
  snapshot_description = "root of ${source.name} built {{isotime \"2006-01-02\"}}"
  source_ami           = "ami-0f8848d57eb4fe2d2"
  ssh_username         = "ec2-user"
  use_create_image     = true

  ami_root_device {
    delete_on_termination = true
    device_name           = "/dev/xvda"
    source_device_name    = "/dev/xvdf"
    volume_size           = 8
    volume_type           = "gp3"
  }

  launch_block_device_mappings {
    delete_on_termination = true
    device_name           = "/dev/xvdf"
    volume_size           = 8
    volume_type           = "gp3"
  }

  launch_block_device_mappings {
    delete_on_termination = true
    device_name           = "/dev/xvdg"
    omit_from_artifact    = true
    volume_size           = 4
    volume_type           = "gp3"
  }
}

build {
  description = "amazon-ebssurrogate with use_create_image: the prepared volume is swapped into the stopped instance's root slot and the AMI made by CreateImage (keeps the instance's billing product codes)."
  sources     = ["source.amazon-ebssurrogate.amazon-ebssurrogate"]

  provisioner "shell" {
    inline = ["sudo mkfs.ext4 /dev/xvdf", "echo prepare the root filesystem here"]
  }
}
