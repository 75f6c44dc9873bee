"""The volume service: attach/detach/extend/info as reversible flows.

:class:`~.volumes.VolumeService` is what the API and the daemon use;
the flows' steps (:mod:`.steps`) are shared by live calls and start-up
reconciliation (:mod:`.reconcile`), which depends on them, not on the
service.
"""

from hostagent.service.volumes import VolumeService

__all__ = ["VolumeService"]
