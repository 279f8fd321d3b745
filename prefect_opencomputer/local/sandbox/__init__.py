"""The sandbox runtime: root filesystems, user namespaces, cgroups, network and layers.

Nothing here knows of HTTP, sandbox ids as the wire spells them, or persistence.
"""
