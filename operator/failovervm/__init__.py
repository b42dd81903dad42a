"""failovervm: a Kopf operator for SR-IOV VMs that keep their network across live migration."""

from failovervm.labels import API_GROUP, API_VERSION

__version__ = "0.1.0"
__all__ = ["API_GROUP", "API_VERSION", "__version__"]
