"""Label selectors and taint tolerations with Kubernetes semantics (pure)."""
from __future__ import annotations

from collections.abc import Sequence

from ..kube_types import KubeObject

SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
TOLERATION_OPERATORS = ("Equal", "Exists", "")
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule only discourages; the scheduler may still use it


class SelectorError(ValueError):
    """A LabelSelector or toleration the API server would reject; the message names the field."""


def check_selector(selector: object, where: str = "selector") -> None:
    """Raise SelectorError when `selector` is not a valid LabelSelector."""
    if selector is None:
        return
    if not isinstance(selector, dict):
        raise SelectorError(f"{where}: expected a LabelSelector mapping")
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SelectorError(f"{where}.matchLabels: expected a mapping of label to value")
    for index, expression in enumerate(selector.get("matchExpressions") or []):
        at = f"{where}.matchExpressions[{index}]"
        if not isinstance(expression, dict) or not expression.get("key"):
            raise SelectorError(f"{at}.key: required")
        operator = expression.get("operator")
        values = expression.get("values") or []
        if operator not in SELECTOR_OPERATORS:
            raise SelectorError(f"{at}.operator: must be one of {', '.join(SELECTOR_OPERATORS)}, got {operator!r}")
        if operator in ("In", "NotIn") and not values:
            raise SelectorError(f"{at}.values: must be non-empty for operator {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{at}.values: must be empty for operator {operator}")


def selector_requirements(selector: KubeObject | None) -> list[tuple[str, str, tuple[str, ...]]]:
    """A selector as (key, operator, values) requirements; matchLabels become In with one value."""
    selector = selector or {}
    requirements: list[tuple[str, str, tuple[str, ...]]] = [
        (str(k), "In", (str(v),)) for k, v in sorted((selector.get("matchLabels") or {}).items())
    ]
    for expression in selector.get("matchExpressions") or []:
        values = tuple(str(v) for v in expression.get("values") or ())
        requirements.append((str(expression["key"]), expression["operator"], values))
    return requirements


def matches_selector(labels: dict[str, str], selector: KubeObject | None) -> bool:
    """Whether a label set satisfies a LabelSelector (an empty selector matches everything)."""
    for key, operator, values in selector_requirements(selector):
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def describe_selector(selector: KubeObject | None) -> str:
    """A selector in kubectl's `-l` syntax: `fedtask.io/device=true,zone in (a,b),!gpu`."""
    parts = []
    for key, operator, values in selector_requirements(selector):
        if operator == "In" and len(values) == 1:
            parts.append(f"{key}={values[0]}")
        elif operator in ("In", "NotIn"):
            parts.append(f"{key} {operator.lower()} ({','.join(values)})")
        else:
            parts.append(key if operator == "Exists" else f"!{key}")
    return ",".join(parts) or "(everything)"


def check_tolerations(tolerations: object, where: str = "tolerations") -> None:
    if tolerations is None:
        return
    if not isinstance(tolerations, (list, tuple)):
        raise SelectorError(f"{where}: expected a list of tolerations")
    for index, toleration in enumerate(tolerations):
        at = f"{where}[{index}]"
        if not isinstance(toleration, dict):
            raise SelectorError(f"{at}: expected a mapping")
        operator = toleration.get("operator") or ""
        if operator not in TOLERATION_OPERATORS:
            raise SelectorError(f"{at}.operator: must be Equal or Exists, got {operator!r}")
        if operator == "Exists" and toleration.get("value"):
            raise SelectorError(f"{at}.value: must be empty when operator is Exists")
        if not toleration.get("key") and operator != "Exists":
            raise SelectorError(f"{at}.operator: must be Exists when key is empty")


def tolerates(toleration: KubeObject, taint: KubeObject) -> bool:
    """Kubernetes' Toleration.ToleratesTaint: effect, key and value (Equal) or key only (Exists)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    if (toleration.get("operator") or "Equal") == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated_taints(taints: Sequence[KubeObject], tolerations: Sequence[KubeObject]) -> list[KubeObject]:
    """The node's NoSchedule/NoExecute taints that no toleration tolerates."""
    return [
        taint for taint in taints
        if taint.get("effect") in BLOCKING_EFFECTS and not any(tolerates(t, taint) for t in tolerations)
    ]


def describe_taint(taint: KubeObject) -> str:
    value = taint.get("value")
    return f"{taint.get('key', '')}{'=' + str(value) if value else ''}:{taint.get('effect', '')}"
