"""The one alias for Kubernetes objects in the core (pure, types only)."""
from __future__ import annotations

from typing import Any, TypeAlias

KubeObject: TypeAlias = dict[str, Any]
"""A Kubernetes object or a part of one (a Pod manifest, a Node, a container, an env entry) as its JSON: the core
builds and reads these as plain dicts, as the API server sends and stores them."""
