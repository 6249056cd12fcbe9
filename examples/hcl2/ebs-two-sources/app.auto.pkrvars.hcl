app_version = "2.3.1"
