packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-instance" "amazon-instance" {
  account_id                   = "123456789012"
  ami_name                     = "web-instance-store-{{timestamp}}"
  ami_virtualization_type      = "hvm"
  bundle_destination           = "/mnt"
  bundle_prefix                = "web-{{timestamp}}"
  bundle_upload_command        = "sudo -i -n ec2-upload-bundle -b {{.BucketName}} -m {{.ManifestPath}} -d {{.BundleDirectory}} --batch --region {{.Region}} --retry"
  bundle_vol_command           = "sudo -i -n ec2-bundle-vol -k {{.KeyPath}} -u {{.AccountId}} -c {{.CertPath}} -r {{.Architecture}} -e {{.PrivatePath}}/* -d {{.Destination}} -p {{.Prefix}} --batch --no-filter"
  delete_bundle_after_register = false
  enhanced_networking          = true
  iam_instance_profile         = "amiflow-bundler"
  instance_type                = "m3.medium"
  region                       = "us-west-2"
  s3_bucket                    = "my-instance-store-images"
  s3_key_prefix                = "bundles/"
  security_group_ids           = ["sg-0123456789abcdef0"]
  source_ami                   = "ami-d9d6a6b0"
  ssh_private_ip               = true
  ssh_username                 = "ubuntu"
  subnet_id                    = "subnet-0123456789abcdef0"
  tags                         = {
    Name = "web"
  }
  vpc_id           = "vpc-0123456789abcdef0"
  x509_cert_path   = "/secure/cert.pem"
  x509_key_path    = "/secure/pk.pem"
  x509_upload_path = "/var/tmp/x509"

  ami_block_device_mappings {
    device_name  = "/dev/sdb"
    virtual_name = "ephemeral0"
  }

  launch_block_device_mappings {
    device_name  = "/dev/sdb"
    virtual_name = "ephemeral0"
  }
}

build {
  description = "amazon-instance with an instance profile (the upload uses the role), custom bundle commands and cleanup of the bundle."
  sources     = ["source.amazon-instance.amazon-instance"]

  provisioner "shell" {
    inline = ["sudo apt-get install -y ec2-ami-tools"]
  }
}
