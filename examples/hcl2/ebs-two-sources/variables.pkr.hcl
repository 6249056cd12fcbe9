# Inputs of the two-image build. app.auto.pkrvars.hcl beside this file sets app_version;
# -var, -var-file and PKR_VAR_* override it.

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "app_version" {
  type        = string
  description = "The release baked into both images (semantic version)."

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.app_version))
    error_message = "The app_version must be a semantic version such as 1.4.2."
  }
}

variable "db_password" {
  type      = string
  default   = env("DB_PASSWORD")
  sensitive = true
}

variable "worker_disks" {
  type = list(object({
    device = string
    size   = number
  }))
  default = [
    { device = "/dev/sdf", size = 50 },
    { device = "/dev/sdg", size = 100 },
  ]
}
