packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-chroot" "amazon-chroot" {
  access_key = "YOUR KEY HERE"
  ami_name   = "packer-amazon-chroot {{timestamp}}"
  secret_key = "YOUR SECRET KEY HERE"
  source_ami = "ami-e81d5881"
}

build {
  description = "The amazon-chroot basic example of Packer's documentation, as it is (it is completely valid except for the access keys). Run it on the build host itself, or name the host with chroot_host_instance_id."
  sources     = ["source.amazon-chroot.amazon-chroot"]
}
