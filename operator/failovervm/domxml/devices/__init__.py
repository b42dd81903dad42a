"""One builder module per device area, after virt-manager's virtinst/devices.

Each builder returns detached lxml elements; :mod:`failovervm.domxml.builder`
assembles them into a domain.
"""
