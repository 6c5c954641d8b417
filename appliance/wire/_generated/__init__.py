"""Code generated from proto/ by appliance.wire.codegen: do not edit."""
