"""InfraSpectre Edge: the network tap appliance and its central EventBus."""

__version__ = "0.1.0"
