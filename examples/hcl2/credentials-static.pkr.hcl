packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebs" "amazon-ebs" {
  access_key    = "AKIAIOSFODNN7EXAMPLE"
  ami_name      = "static-credentials-{{timestamp}}"
  communicator  = "none"
  instance_type = "t3.micro"
  region        = "us-east-1"
  secret_key    = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
  source_ami    = "ami-0f8848d57eb4fe2d2"
}

build {
  description = "Credentials, seed document 'Static Credentials': keys in the template (refused in a deployed execution, which would store them in its history; use a variable marked sensitive at least)."
  sources     = ["source.amazon-ebs.amazon-ebs"]
}
