"""Code generated from proto/ by appliance.devkit.codegen: do not edit."""
