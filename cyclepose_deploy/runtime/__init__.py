"""The deployment runtime. Imports no torch: it is what runs on a Jetson."""
