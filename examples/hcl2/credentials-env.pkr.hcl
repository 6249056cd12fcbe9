packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebs" "amazon-ebs" {
  ami_name      = "environment-credentials-{{timestamp}}"
  communicator  = "none"
  instance_type = "t3.micro"
  region        = "us-west-2"
  source_ami    = "ami-0f8848d57eb4fe2d2"
}

build {
  description = "Credentials, seed document 'Environment variables' / 'IAM Task or Instance Role': no keys in the template; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or Packer's AWS_ACCESS_KEY/AWS_SECRET_KEY), then the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE), then the task or instance role. Without region here, AWS_REGION/AWS_DEFAULT_REGION supply it."
  sources     = ["source.amazon-ebs.amazon-ebs"]
}
