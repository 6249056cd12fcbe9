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

# The HCL2 twin of examples/ebs-al2023.json: `amiflow start examples/hcl2/ebs-al2023.pkr.hcl
# --var region=eu-west-1 --watch` on a deployed stack (infra/README.md).
source "amazon-ebs" "amazon-ebs" {
  ami_name      = "amiflow-first-{{timestamp}}"
  communicator  = "none"
  instance_type = "t3.micro"
  region        = var.region
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }
}

build {
  description = "A first build on a deployed amiflow (infra/README.md): the latest Amazon Linux 2023 image of the region, no provisioning, an AMI. `amiflow start examples/ebs-al2023.json --var region=eu-west-1 --watch`."
  sources     = ["source.amazon-ebs.amazon-ebs"]
}
