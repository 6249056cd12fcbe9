packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}

source "amazon-ebs" "amazon-ebs" {
  ami_name             = "windows-iis-{{isotime `2006-01-02-1504`}}"
  communicator         = "winrm"
  iam_instance_profile = "amiflow-ssm-instance"
  instance_type        = "t3.large"
  region               = "us-east-1"
  ssm_output_s3_bucket = "my-amiflow-logs"
  winrm_insecure       = true
  winrm_timeout        = "20m"
  winrm_use_ssl        = true
  winrm_username       = "Administrator"

  source_ami_filter {
    filters = {
      name                = "Windows_Server-2022-English-Full-Base-*"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    most_recent = true
    owners      = ["amazon"]
  }
}

build {
  description = "A Windows Server image from a template written for WinRM, as amiflow runs it: over SSM (AWS-RunPowerShellScript), no inbound port, no password. The instance profile must allow SSM (AmazonSSMManagedInstanceCore) and read the staging bucket."
  sources     = ["source.amazon-ebs.amazon-ebs"]

  provisioner "powershell" {
    environment_vars = ["SITE=amiflow"]
    inline           = ["Install-WindowsFeature -Name Web-Server -IncludeManagementTools"]
  }

  provisioner "windows-restart" {
    restart_timeout = "15m"
  }

  provisioner "powershell" {
    inline = ["if ((Get-Service W3SVC).Status -ne 'Running') { exit 1 }"]
  }

  provisioner "windows-shell" {
    inline = ["sc query W3SVC"]
  }

  provisioner "file" {
    content     = "<h1>built by amiflow</h1>\n"
    destination = "C:/inetpub/wwwroot/index.html"
  }
}
