packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebs" "amazon-ebs" {
  ami_name      = "profile-credentials-{{timestamp}}"
  communicator  = "none"
  instance_type = "t3.micro"
  profile       = "customprofile"
  region        = "us-east-1"
  source_ami    = "ami-0f8848d57eb4fe2d2"
}

build {
  description = "Credentials, seed document 'Shared Credentials file': the profile option (AWS_PROFILE and AWS_SHARED_CREDENTIALS_FILE work too)."
  sources     = ["source.amazon-ebs.amazon-ebs"]
}
