packer {
  required_version = ">= 1.6.0"

  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

variable "app_version" {
  type    = string
  default = "1.4.2"
}

variable "db_password" {
  type      = string
  default   = env("DB_PASSWORD")
  sensitive = true
}

variable "kms_key" {
  type    = string
  default = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
}

variable "region" {
  type    = string
  default = "us-east-1"
}

locals {
  # The image's name prefix, shared by its tags, its snapshot's and the instance's.
  name = "app-${var.app_version}"
}

source "amazon-ebs" "app-image" {
  ami_description             = "app ${var.app_version} on {{ .SourceAMIName }}"
  ami_name                    = "${local.name}-{{timestamp}}"
  ami_org_arns                = ["arn:aws:organizations::123456789012:organization/o-abc123def4"]
  ami_regions                 = ["us-west-2", "eu-central-1"]
  ami_users                   = ["210987654321"]
  ami_virtualization_type     = "hvm"
  associate_public_ip_address = false
  communicator                = "ssh"
  deprecate_at                = "2030-01-01T00:00:00Z"
  ebs_optimized               = true
  ena_support                 = true
  encrypt_boot                = true
  force_delete_snapshot       = true
  force_deregister            = true
  imds_support                = "v2.0"
  instance_type               = "m6i.large"
  kms_key_id                  = var.kms_key
  max_retries                 = 20
  profile                     = "build"
  region                      = var.region
  region_kms_key_ids          = {
    eu-central-1 = "arn:aws:kms:eu-central-1:123456789012:alias/amiflow"
    us-east-1    = var.kms_key
    us-west-2    = "alias/amiflow"
  }
  run_volume_tags = {
    Name = "amiflow-build-volume"
  }
  shutdown_behavior = "terminate"
  snapshot_tags     = {
    Name = "${local.name}-snapshot"
  }
  snapshot_users = ["210987654321"]
  sriov_support  = true
  ssh_interface  = "private_ip"
  ssh_timeout    = "15m"
  ssh_username   = "ubuntu"
  tags           = {
    Base_AMI_Name = "{{ .SourceAMIName }}"
    Name          = local.name
    Region        = "{{ .BuildRegion }}"
  }
  user_data_file = "cloud-init.yaml"

  ami_block_device_mappings {
    device_name  = "/dev/sdb"
    virtual_name = "ephemeral0"
  }

  ami_block_device_mappings {
    device_name = "/dev/sdc"
    no_device   = true
  }

  assume_role {
    duration_seconds = 3600
    external_id      = "amiflow-ci"
    role_arn         = "arn:aws:iam::123456789012:role/amiflow-builder"
    session_name     = "amiflow"
  }

  aws_polling {
    delay_seconds = 15
    max_attempts  = 240
  }

  launch_block_device_mappings {
    delete_on_termination = true
    device_name           = "/dev/sda1"
    iops                  = 4000
    throughput            = 250
    volume_size           = 30
    volume_type           = "gp3"
  }

  launch_block_device_mappings {
    delete_on_termination = true
    device_name           = "/dev/sdf"
    encrypted             = true
    iops                  = 5000
    kms_key_id            = "alias/amiflow"
    volume_size           = 100
    volume_type           = "io2"
  }

  metadata_options {
    http_put_response_hop_limit = 1
    http_tokens                 = "required"
  }

  security_group_filter {
    filters = {
      "tag:Role" = "packer"
    }
  }

  source_ami_filter {
    filters = {
      name                = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
      virtualization-type = "hvm"
    }
    most_recent = true
    owners      = ["099720109477"]
  }

  subnet_filter {
    filters = {
      "tag:Tier" = "private"
    }
    most_free = true
  }

  temporary_iam_instance_profile_policy_document {
    Version = "2012-10-17"

    Statement {
      Action   = ["s3:GetObject"]
      Effect   = "Allow"
      Resource = ["arn:aws:s3:::my-artifacts/*"]
    }
  }

  run_tag {
    key   = "Name"
    value = "amiflow-build-${var.app_version}"
  }

  vpc_filter {
    filters = {
      isDefault  = "false"
      "tag:Name" = "build"
    }
  }
}

build {
  description = "amazon-ebs with most options: networking by filter, temporary instance profile, block devices, encryption and copies, sharing, tags, deprecation."
  sources     = ["source.amazon-ebs.app-image"]

  provisioner "shell" {
    environment_vars = ["DB_PASSWORD=${var.db_password}"]
    inline           = ["echo configuring app ${var.app_version}"]
  }

  post-processor "manifest" {
    output     = "manifest.json"
    strip_path = true
  }
}
