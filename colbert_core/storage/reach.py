"""The multi-node storage rule: what a remote worker reads or writes must be reachable
from every node.

On a cluster of more than one node an actor may run anywhere, and a local path names a
different disk on each node: an encoder writing ``--out`` locally would leave its shard on
its own node while the manifest stays on the driver's. So such a path is refused before any
work unless it is on S3 or the user declares it a shared mount (``--shared-fs``: NFS, EFS,
Lustre mounted at the same path on every node).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError


class SharedStorageError(ConfigError):
    """A local path was given to workers of a multi-node cluster without ``--shared-fs``."""


def require_reachable(
    paths: Mapping[str, str | None],
    *,
    nodes: int,
    shared_fs: bool,
    remote: bool | None = None,
) -> None:
    """Refuse local ``paths`` (option name -> path) that workers on other nodes than the
    driver would read or write, unless ``shared_fs`` declares them shared.

    ``remote`` says whether workers may run on another node (default: ``nodes > 1``; also
    true for a one-node cluster whose head offers no CPU, as workers will be elsewhere).

    >>> require_reachable({"--out": "out/x"}, nodes=1, shared_fs=False)
    >>> require_reachable({"--out": "s3://b/x"}, nodes=3, shared_fs=False)
    >>> require_reachable({"--out": "out/x"}, nodes=3, shared_fs=False)
    Traceback (most recent call last):
    ...
    colbert_core.storage.reach.SharedStorageError: --out out/x is a local path, but the Ray cluster has 3 nodes that share no disk: workers on other nodes cannot see it. Use an s3://bucket/prefix, or pass --shared-fs if out/x is a shared mount (NFS, EFS, Lustre) at the same path on every node.
    """
    from . import is_s3  # the package's one rule for what is S3

    if not (nodes > 1 if remote is None else remote) or shared_fs:
        return
    for option, path in paths.items():
        if path is None or is_s3(path):
            continue
        where = (
            f"the Ray cluster has {nodes} nodes that share no disk"
            if nodes > 1
            else "this node offers no CPU or GPU, so workers run on nodes yet to start"
        )
        raise SharedStorageError(
            f"{option} {path} is a local path, but {where}: workers on other nodes cannot "
            "see it. Use an s3://bucket/prefix, "
            f"or pass --shared-fs if {path} is a shared mount (NFS, EFS, Lustre) at the same "
            "path on every node.",
            key=option,
        )
