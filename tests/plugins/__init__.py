"""A stand-in third-party plugin package and its test. This folder is a package so that pytest puts
tests/, not this folder, on sys.path: the plugin's dist-info is visible only where a test asks."""
