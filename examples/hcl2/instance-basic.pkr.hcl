packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-instance" "amazon-instance" {
  access_key       = "YOUR KEY HERE"
  account_id       = "0123-4567-0890"
  ami_name         = "packer-quick-start {{timestamp}}"
  instance_type    = "m1.small"
  region           = "us-east-1"
  s3_bucket        = "packer-images"
  secret_key       = "YOUR SECRET KEY HERE"
  source_ami       = "ami-d9d6a6b0"
  ssh_username     = "ubuntu"
  x509_cert_path   = "x509.cert"
  x509_key_path    = "x509.key"
  x509_upload_path = "/tmp"
}

build {
  description = "The amazon-instance basic example of Packer's documentation, as it is (it is completely valid except for the access keys)."
  sources     = ["source.amazon-instance.amazon-instance"]
}
