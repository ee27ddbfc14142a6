"""From the API's Pod to the manifest the process kubelet runs (`prepare`), resolving through the API what a kubelet
resolves: the image's entrypoint, Secrets and ConfigMaps (env, envFrom, volumes), projected volumes (the service
account token from a TokenRequest bound to the pod, the `kube-root-ca.crt` ConfigMap, the downward API), and
PersistentVolumeClaims bound to hostPath/local PersistentVolumes.

Volumes the process kubelet cannot map (projected, downwardAPI) are written to a folder and handed over as hostPath
volumes. A mount whose path a program reads at a fixed location (`/var/run/secrets/kubernetes.io/serviceaccount`,
where the Kubernetes client and kopf look for the in-cluster token) cannot be rewritten in the command line: the pod
then runs in its own mount namespace (`unshare --mount`, as root) with the folder bind-mounted onto that path.
"""
from __future__ import annotations

import base64
import copy
import os
import shutil
import sys
from pathlib import Path

from fedtask_operator.agent.images import ImageMap, ImageMapError
from fedtask_operator.agent.node_api import ApiError, NodeApi

SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
BIND_MOUNT_PATHS = (SERVICE_ACCOUNT_PATH,)  # read by programs at a fixed place: bind-mounted, never rewritten
DEFAULT_TOKEN_SECONDS = 3600
# Bind-mounts its (source, target) pairs up to "--", then runs the command (in the namespace `unshare` made).
BIND_SCRIPT = ('while [ "$1" != "--" ]; do mount --bind "$1" "$2" || exit 126; shift 2; done; shift; '
               'exec "$@"')


class PrepareError(Exception):
    """The pod cannot start yet; reason/message are what `kubectl get pod` shows (the container waits)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def decode_data(obj: dict) -> dict[str, str]:
    """A Secret's `data` (base64) or a ConfigMap's `data`/`binaryData` as text."""
    out: dict[str, str] = {}
    if obj.get("kind") == "Secret" or "type" in obj:
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(value).decode("utf-8", errors="replace")
        return out
    out.update({key: str(value) for key, value in (obj.get("data") or {}).items()})
    for key, value in (obj.get("binaryData") or {}).items():
        out[key] = base64.b64decode(value).decode("utf-8", errors="replace")
    return out


class ApiObjects:
    """The process kubelet's `secrets`/`config_maps` store (`.get("namespace/name")`), served from what `prepare`
    fetched for the pod it is starting (the Node authorizer lets a node read only what its pods reference)."""

    def __init__(self) -> None:
        self.cache: dict[str, dict[str, str]] = {}

    def __bool__(self) -> bool:
        return True

    def get(self, key: str, default=None):
        return self.cache.get(key, default)


class PodPreparer:
    """Builds the local manifest of an API pod (see the module docstring)."""

    def __init__(self, api: NodeApi, images: ImageMap, volumes_root: Path, *, bind_mounts: bool = True):
        self.api = api
        self.images = images
        self.volumes_root = Path(volumes_root)
        self.bind_mounts = bind_mounts  # False: not root / no mount namespaces; such pods cannot start
        self.secrets = ApiObjects()
        self.config_maps = ApiObjects()

    def prepare(self, pod: dict) -> dict:
        """The manifest for ProcessKubelet.run_pod. Raises PrepareError (the pod waits) or ApiError (retry)."""
        local = copy.deepcopy(pod)
        spec = local["spec"]
        containers = spec.get("containers") or []
        if len(containers) != 1 or spec.get("initContainers"):
            raise PrepareError("Unsupported", "the node agent runs pods with exactly one container and no init "
                                              f"containers (got {len(containers)} and "
                                              f"{len(spec.get('initContainers') or [])})")
        container = containers[0]
        try:
            argv = self.images.argv(container)
        except ImageMapError as err:
            raise PrepareError("ErrImagePull", str(err)) from None
        self._fetch_references(pod, container)
        binds = self._volumes(pod, local, container)
        env = container.setdefault("env", [])
        if not any(item.get("name") == "HOSTNAME" for item in env):
            env.insert(0, {"name": "HOSTNAME", "value": pod["metadata"]["name"]})
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable  # the node's python: the venv with our packages
        if binds:
            if not self.bind_mounts:
                raise PrepareError("CreateContainerError", f"the pod mounts {', '.join(t for _, t in binds)}, "
                                   "which needs a mount namespace (run the node agent as root)")
            for _, target in binds:
                os.makedirs(target, exist_ok=True)  # the mount point (an empty folder outside the pod)
            pairs = [part for source, target in binds for part in (source, target)]
            argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", BIND_SCRIPT, "sh",
                    *pairs, "--", *argv]
        container["command"] = argv
        container["args"] = []
        return local

    # ------------------------------------------------------------------------------------------------- references
    def _fetch_references(self, pod: dict, container: dict) -> None:
        """Fetch every Secret/ConfigMap the container's env and the pod's volumes use; a missing one that is not
        optional keeps the pod waiting, as a kubelet does (CreateContainerConfigError)."""
        namespace = pod["metadata"]["namespace"]
        wanted: list[tuple[str, str, bool, str | None]] = []  # (kind, name, optional, key)
        for source in container.get("envFrom") or []:
            for kind in ("secretRef", "configMapRef"):
                if kind in source:
                    wanted.append((kind[:-3], source[kind]["name"], bool(source[kind].get("optional")), None))
        for item in container.get("env") or []:
            value_from = item.get("valueFrom") or {}
            for kind in ("secretKeyRef", "configMapKeyRef"):
                if kind in value_from:
                    ref = value_from[kind]
                    wanted.append((kind[:-6], ref["name"], bool(ref.get("optional")), ref["key"]))
        for volume in pod["spec"].get("volumes") or []:
            if "secret" in volume:
                wanted.append(("secret", volume["secret"]["secretName"], bool(volume["secret"].get("optional")),
                               None))
            if "configMap" in volume:
                wanted.append(("configMap", volume["configMap"]["name"],
                               bool(volume["configMap"].get("optional")), None))
        for kind, name, optional, key in wanted:
            store = self.secrets if kind == "secret" else self.config_maps
            data = self._fetch(kind, namespace, name)
            what = "secret" if kind == "secret" else "configmap"
            if data is None:
                store.cache.pop(f"{namespace}/{name}", None)
                if not optional:
                    raise PrepareError("CreateContainerConfigError", f'{what} "{name}" not found')
                continue
            store.cache[f"{namespace}/{name}"] = data
            if key is not None and key not in data and not optional:
                raise PrepareError("CreateContainerConfigError", f'couldn\'t find key {key} in {what} "{name}"')

    def _fetch(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        obj = (self.api.get_secret if kind == "secret" else self.api.get_config_map)(namespace, name)
        if obj is None:
            return None
        obj.setdefault("kind", "Secret" if kind == "secret" else "ConfigMap")
        return decode_data(obj)

    def release(self, pod: dict) -> None:
        """Remove the folders written for the pod's projected and downward API volumes (it is gone)."""
        meta = pod["metadata"]
        shutil.rmtree(self.volumes_root / meta["namespace"] / meta["name"] / meta["uid"], ignore_errors=True)

    # ---------------------------------------------------------------------------------------------------- volumes
    def _volumes(self, pod: dict, local: dict, container: dict) -> list[tuple[str, str]]:
        """Rewrite the local manifest's volumes; return the (folder, mountPath) pairs to bind-mount."""
        meta = pod["metadata"]
        folder_root = self.volumes_root / meta["namespace"] / meta["name"] / meta["uid"]
        by_name = {}
        for volume in local["spec"].get("volumes") or []:
            name = volume["name"]
            if "projected" in volume or "downwardAPI" in volume:
                folder = folder_root / name
                folder.mkdir(parents=True, exist_ok=True)
                if "projected" in volume:
                    self._write_projected(pod, volume["projected"], folder)
                else:
                    self._write_items(folder, self._downward_items(pod, volume["downwardAPI"].get("items") or []))
                volume.clear()
                volume.update({"name": name, "hostPath": {"path": str(folder), "type": "Directory"}})
            elif "persistentVolumeClaim" in volume:
                path = self._claim_path(meta["namespace"], volume["persistentVolumeClaim"]["claimName"])
                if path is not None:
                    volume.clear()
                    volume.update({"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}})
            by_name[name] = volume
        binds = []
        kept = []
        for mount in container.get("volumeMounts") or []:
            target = mount["mountPath"].rstrip("/")
            volume = by_name.get(mount["name"])
            if target in BIND_MOUNT_PATHS and volume is not None and "hostPath" in volume:
                binds.append((volume["hostPath"]["path"], target))
            else:
                kept.append(mount)
        if container.get("volumeMounts") is not None:
            container["volumeMounts"] = kept
        return binds

    def _claim_path(self, namespace: str, claim: str) -> str | None:
        """The folder of the PersistentVolume bound to the claim (hostPath or local); None: the process kubelet's
        own claims folder. An unbound claim keeps the pod waiting."""
        pvc = self.api.get_pvc(namespace, claim)
        if pvc is None:
            raise PrepareError("FailedMount", f'persistentvolumeclaim "{claim}" not found')
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        if not volume_name or (pvc.get("status") or {}).get("phase") != "Bound":
            raise PrepareError("FailedMount", f'persistentvolumeclaim "{claim}" is not bound')
        pv = self.api.get_pv(volume_name)
        if pv is None:
            raise PrepareError("FailedMount", f'persistentvolume "{volume_name}" not found')
        source = pv.get("spec") or {}
        for kind in ("hostPath", "local"):
            if kind in source:
                return source[kind]["path"]
        return None

    def _write_projected(self, pod: dict, projected: dict, folder: Path) -> None:
        namespace = pod["metadata"]["namespace"]
        files: dict[str, str] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                token_source = source["serviceAccountToken"]
                audiences = [token_source["audience"]] if token_source.get("audience") else []
                service_account = pod["spec"].get("serviceAccountName") or "default"
                try:
                    token = self.api.create_token(pod, service_account, audiences,
                                                  int(token_source.get("expirationSeconds") or
                                                      DEFAULT_TOKEN_SECONDS))
                except ApiError as err:
                    if err.status in (403, 404):
                        raise PrepareError("FailedMount", f"service account token for {service_account}: "
                                                          f"{err.message}") from None
                    raise
                files[token_source["path"]] = token["status"]["token"]
            for kind, what in (("configMap", "configmap"), ("secret", "secret")):
                if kind not in source:
                    continue
                ref = source[kind]
                data = self._fetch(kind, namespace, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise PrepareError("FailedMount", f'{what} "{ref["name"]}" not found')
                items = ref.get("items")
                if items:
                    for item in items:
                        if item["key"] not in data:
                            if ref.get("optional"):
                                continue
                            raise PrepareError("FailedMount", f'couldn\'t find key {item["key"]} in {what} '
                                                              f'"{ref["name"]}"')
                        files[item["path"]] = data[item["key"]]
                else:
                    files.update(data)
            if "downwardAPI" in source:
                files.update(self._downward_items(pod, source["downwardAPI"].get("items") or []))
            if "clusterTrustBundle" in source or "podCertificate" in source:
                raise PrepareError("FailedMount", f"projected source {sorted(source)} is not supported by the "
                                                  "node agent")
        self._write_items(folder, files)

    @staticmethod
    def _downward_items(pod: dict, items: list[dict]) -> dict[str, str]:
        meta = pod["metadata"]
        values = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
                  "metadata.uid": meta.get("uid", ""),
                  "metadata.labels": "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get("labels") or {}).items())),
                  "metadata.annotations": "\n".join(f'{k}="{v}"' for k, v in
                                                    sorted((meta.get("annotations") or {}).items()))}
        files = {}
        for item in items:
            field_ref = item.get("fieldRef")
            if field_ref is None:
                raise PrepareError("FailedMount", f"downwardAPI item {item.get('path')}: only fieldRef is supported")
            path = field_ref["fieldPath"]
            if path not in values:
                raise PrepareError("FailedMount", f"downwardAPI item {item.get('path')}: unsupported field {path}")
            files[item["path"]] = values[path]
        return files

    @staticmethod
    def _write_items(folder: Path, files: dict[str, str]) -> None:
        for relative, content in files.items():
            target = folder / relative
            if folder.resolve() not in target.resolve().parents:
                raise PrepareError("FailedMount", f"volume item path {relative!r} leaves the volume")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
