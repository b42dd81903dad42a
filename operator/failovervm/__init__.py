"""failovervm: a Kopf operator for SR-IOV VMs that keep their network across live migration."""

__version__ = "0.1.0"
API_GROUP = "failovervm.io"
API_VERSION = "v1alpha1"
