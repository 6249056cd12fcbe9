"""A small IAM policy evaluator for what moto does not evaluate.

moto (5.2) matches a statement's Resource only against "*" (every Allow on a specific ARN is
ignored), does not check iam:PassRole at all, and has no Lambda resource-policy or Step
Functions role checks. The simulated account evaluates those few decisions itself, with the
rules of identity-based policies: an explicit Deny wins, else some Allow must match action,
resource and conditions.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _matches(pattern: str, value: str, case_sensitive: bool) -> bool:
    if not case_sensitive:
        pattern, value = pattern.lower(), value.lower()
    # IAM wildcards: * any run of characters, ? one character (fnmatch's [] are not IAM's).
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _condition_holds(condition: dict[str, Any] | None, context: dict[str, str]) -> bool:
    """StringEquals / StringLike (and their Not forms), Bool and Null on the context keys;
    a key the request does not carry fails a positive operator, as in IAM."""
    for operator, keys in (condition or {}).items():
        for key, expected in keys.items():
            actual = context.get(key)
            wanted = [str(v) for v in _as_list(expected)]
            if operator == "StringEquals":
                ok = actual is not None and actual in wanted
            elif operator == "StringLike":
                ok = actual is not None and any(_matches(w, actual, True) for w in wanted)
            elif operator == "StringNotEquals":
                ok = actual is None or actual not in wanted
            elif operator == "StringNotLike":
                ok = actual is None or not any(_matches(w, actual, True) for w in wanted)
            elif operator == "Bool":
                ok = actual is not None and actual.lower() in [w.lower() for w in wanted]
            elif operator == "Null":
                ok = (actual is None) == (wanted[0].lower() == "true")
            else:
                raise ValueError(f"condition operator {operator} is not evaluated by the simulated account")
            if not ok:
                return False
    return True


def _statement_applies(statement: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    if "NotAction" in statement:
        if any(_matches(a, action, False) for a in _as_list(statement["NotAction"])):
            return False
    elif not any(_matches(a, action, False) for a in _as_list(statement.get("Action"))):
        return False
    if "NotResource" in statement:
        if any(_matches(r, resource, True) for r in _as_list(statement["NotResource"])):
            return False
    elif not any(_matches(r, resource, True) for r in _as_list(statement.get("Resource"))):
        return False
    return _condition_holds(statement.get("Condition"), context)


def statements(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every statement of the documents (a lone statement object counts as a list of one)."""
    out: list[dict[str, Any]] = []
    for doc in documents:
        out.extend(s for s in _as_list(doc.get("Statement")) if isinstance(s, dict))
    return out


def allowed(documents: Iterable[dict[str, Any]], action: str, resource: str, context: dict[str, str] | None = None) -> bool:
    """Whether identity policies `documents` allow `action` on `resource`."""
    context = context or {}
    found = False
    for statement in statements(documents):
        if not _statement_applies(statement, action, resource, context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow":
            found = True
    return found


def actions_of(documents: Iterable[dict[str, Any]]) -> set[str]:
    """Every action an Allow statement names (wildcards kept as written)."""
    return {a for s in statements(documents) if s.get("Effect") == "Allow" for a in _as_list(s.get("Action"))}


def unqualified(arn: str) -> str:
    """A Lambda function ARN without its alias or version (`function:NAME:live` → `function:NAME`)."""
    return arn if arn.count(":") <= 6 else arn.rsplit(":", 1)[0]


def trusts(trust_policy: dict[str, Any], principal_arn: str, context: dict[str, str] | None = None) -> bool:
    """Whether a role's trust policy lets `principal_arn` (a role, a session of it, or a
    user) assume it: an Allow of sts:AssumeRole naming it among its AWS principals, its
    conditions holding on `context` (`sts:ExternalId`), no Deny."""
    found = False
    for statement in statements([trust_policy]):
        if not any(_matches(a, "sts:AssumeRole", False) for a in _as_list(statement.get("Action"))):
            continue
        principals = statement.get("Principal")
        named = principals == "*" or (isinstance(principals, dict) and principal_arn in _as_list(principals.get("AWS")))
        if not named or not _condition_holds(statement.get("Condition"), context or {}):
            continue
        if statement.get("Effect") == "Deny":
            return False
        found = found or statement.get("Effect") == "Allow"
    return found
