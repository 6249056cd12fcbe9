packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-chroot" "amazon-chroot" {
  ami_description         = "chroot build of {{ .SourceAMI }}"
  ami_name                = "amiflow-chroot-{{timestamp}}"
  ami_regions             = ["us-west-2"]
  ami_virtualization_type = "hvm"
  chroot_mounts           = [
    ["proc", "proc", "/proc"],
    ["sysfs", "sysfs", "/sys"],
    ["bind", "/dev", "/dev"],
    ["devpts", "devpts", "/dev/pts"],
    ["binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
    ["bind", "/run", "/run"],
  ]
  command_wrapper          = "sudo {{.Command}}"
  copy_files               = ["/etc/resolv.conf", "/etc/hosts"]
  device_path              = "/dev/sdf"
  ena_support              = true
  mount_options            = ["noatime"]
  mount_partition          = "1"
  mount_path               = "/mnt/amiflow/{{.Device}}"
  nvme_device_path         = "/dev/nvme1n1p"
  post_mount_commands      = ["echo mounted {{.Device}} at {{.MountPath}}"]
  pre_mount_commands       = ["echo attaching {{.Device}}"]
  region                   = "us-east-1"
  root_volume_encrypt_boot = true
  root_volume_kms_key_id   = "alias/amiflow"
  root_volume_size         = 16
  root_volume_tags         = {
    Name = "amiflow-chroot-root"
  }
  root_volume_type = "gp3"
  sriov_support    = true
  tags             = {
    Name   = "amiflow-chroot"
    Source = "{{ .SourceAMI }}"
  }

  chroot_host_filter {
    filters = {
      instance-state-name = "running"
      "tag:Role"          = "amiflow-chroot-host"
    }
  }

  source_ami_filter {
    filters = {
      name = "amzn2-ami-hvm-*-x86_64-gp2"
    }
    most_recent = true
    owners      = ["amazon"]
  }
}

build {
  description = "amazon-chroot on a named build host, with custom mounts, files, wrapper and root volume."
  sources     = ["source.amazon-chroot.amazon-chroot"]

  provisioner "shell" {
    inline = ["yum -y install htop"]
  }
}
