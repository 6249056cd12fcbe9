packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-chroot" "amazon-chroot" {
  ami_architecture        = "x86_64"
  ami_name                = "scratch-{{timestamp}}"
  ami_virtualization_type = "hvm"
  boot_mode               = "uefi-preferred"
  chroot_host_instance_id = "i-0123456789abcdef0"
  copy_files              = []
  from_scratch            = true
  post_mount_commands     = ["debootstrap jammy {{.MountPath}}"]
  pre_mount_commands      = [
    "parted {{.Device}} mklabel gpt mkpart primary ext4 1MiB 100%",
    "mkfs.ext4 {{.Device}}1",
  ]
  region           = "us-east-1"
  root_device_name = "/dev/xvda"
  root_volume_size = 8

  ami_block_device_mappings {
    delete_on_termination = true
    device_name           = "/dev/xvda"
    volume_size           = 8
    volume_type           = "gp3"
  }
}

build {
  description = "amazon-chroot from_scratch: an empty volume partitioned and filled by pre_mount_commands."
  sources     = ["source.amazon-chroot.amazon-chroot"]
}
