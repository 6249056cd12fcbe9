build {
  name        = "app"
  description = "Two images of one application from one base source."

  source "source.amazon-ebs.base" {
    name     = "web"
    ami_name = "web-${var.app_version}-${local.stamp}"
    run_tags = { Role = "web" }
  }

  source "source.amazon-ebs.base" {
    name          = "worker"
    ami_name      = "worker-${var.app_version}-${local.stamp}"
    ebs_optimized = true
    run_tags      = { Role = "worker" }

    dynamic "ami_block_device_mappings" {
      for_each = var.worker_disks
      iterator = disk
      content {
        device_name = disk.value.device
        volume_size = disk.value.size
        volume_type = "gp3"
      }
    }
  }

  provisioner "shell" {
    environment_vars = ["DB_PASSWORD=${var.db_password}", "ROLE=${source.name}"]
    inline           = ["echo configuring ${source.name} ${var.app_version}"]
    max_retries      = 2
  }

  provisioner "shell" {
    only   = ["amazon-ebs.worker"]
    inline = ["echo the worker queue on ${build.ID}"]
  }

  post-processor "manifest" {
    output     = "manifest.json"
    strip_path = true
    custom_data = {
      version = var.app_version
    }
  }
}
