"""The SAM template as `sam package` + `sam deploy` would put it into an account, and a check
that what moto's CloudFormation created is what the template declares.

`package` rewrites the two local paths the SAM translator refuses (CodeUri, DefinitionUri)
the way `sam package` does: the code becomes an S3 URI of an uploaded zip, the definition is
inlined. `translate` runs the SAM translator (samtranslator, from the SAM CLI in the venv).
`Resolver` evaluates CloudFormation intrinsics against the created stack, so the expected
value of every property is derived from the template, never from a list kept here.
`verify` compares each declared resource with what the services report.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any, Callable

ACCOUNT_ID = "123456789012"

NO_VALUE = object()


def package(template: dict[str, Any], template_dir: str, code_uri: str) -> dict[str, Any]:
    """What `sam package` does to the template: code to S3, state machine definitions inline."""
    t = copy.deepcopy(template)
    globals_fn = t.get("Globals", {}).get("Function", {})
    if "CodeUri" in globals_fn:
        globals_fn["CodeUri"] = code_uri
    for resource in t["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function" and "CodeUri" in props:
            props["CodeUri"] = code_uri
        if resource["Type"] == "AWS::Serverless::StateMachine" and "DefinitionUri" in props:
            path = props.pop("DefinitionUri")
            with open(f"{template_dir}/{path}", encoding="utf-8") as f:
                props["Definition"] = json.load(f)
    return t


def translate(template: dict[str, Any], parameters: dict[str, str], region: str) -> dict[str, Any]:
    """SAM → CloudFormation with the SAM CLI's translator (which reads the region from the
    environment, as a boto3 session does)."""
    from samtranslator.translator.transform import transform

    os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"] = region

    class NoManagedPolicies:
        """The translator asks for AWS managed policy ARNs only when a function names policies
        by name; amiflow's roles name none."""

        def load(self) -> dict[str, str]:
            return {}

    return transform(template, parameters, NoManagedPolicies())


def parameter_values(template: dict[str, Any], given: dict[str, str]) -> dict[str, Any]:
    """Every declared parameter's value (given, else its default), typed as CloudFormation
    hands them to intrinsics: CommaDelimitedList as a list of strings."""
    out: dict[str, Any] = {}
    for name, decl in template.get("Parameters", {}).items():
        value = given.get(name, decl.get("Default", ""))
        value = str(value)
        out[name] = value.split(",") if decl.get("Type") == "CommaDelimitedList" else value
    return out


class Resolver:
    """CloudFormation intrinsics (Ref, Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Split, Fn::Select,
    Fn::If and the condition functions) against a created stack."""

    def __init__(
        self,
        template: dict[str, Any],
        params: dict[str, Any],
        region: str,
        stack_name: str,
        ref: Callable[[str], Any],
        get_att: Callable[[str, str], Any],
    ):
        self.template = template
        self.params = params
        self.pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::StackName": stack_name,
            "AWS::URLSuffix": "amazonaws.com",
        }
        self._ref = ref
        self._get_att = get_att
        self.conditions = {name: self.condition(name) for name in template.get("Conditions", {})}

    def condition(self, name: str) -> bool:
        return bool(self._eval_condition(self.template["Conditions"][name]))

    def _eval_condition(self, c: Any) -> Any:
        if isinstance(c, dict) and len(c) == 1:
            (k, v), = c.items()
            if k == "Fn::Equals":
                a, b = (self.resolve(x) for x in v)
                return a == b
            if k == "Fn::Not":
                return not self._eval_condition(v[0])
            if k == "Fn::And":
                return all(self._eval_condition(x) for x in v)
            if k == "Fn::Or":
                return any(self._eval_condition(x) for x in v)
            if k == "Condition":
                return self.condition(v)
        return self.resolve(c)

    def enabled(self, resource: dict[str, Any]) -> bool:
        name = resource.get("Condition")
        return name is None or self.conditions[name]

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.params:
            return self.params[name]
        return self._ref(name)

    def _sub(self, text: str, variables: dict[str, Any]) -> str:
        def one(m: re.Match[str]) -> str:
            expr = m.group(1)
            if expr.startswith("!"):
                return "${" + expr[1:] + "}"
            if expr in variables:
                return str(variables[expr])
            if "." in expr and expr.split(".", 1)[0] not in self.pseudo:
                res, att = expr.split(".", 1)
                return str(self._get_att(res, att))
            return str(self.ref(expr))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, v: Any) -> Any:
        if isinstance(v, list):
            items = [self.resolve(x) for x in v]
            return [x for x in items if x is not NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, arg), = v.items()
            if k == "Ref":
                return self.ref(arg)
            if k == "Fn::GetAtt":
                res, att = arg if isinstance(arg, list) else arg.split(".", 1)
                return self._get_att(res, att)
            if k == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.conditions[cond] else no)
            if k == "Fn::Sub":
                if isinstance(arg, str):
                    return self._sub(arg, {})
                text, variables = arg
                return self._sub(text, {n: self.resolve(x) for n, x in variables.items()})
            if k == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if k == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
            if k == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if k in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition"):
                return self._eval_condition(v)
        out = {}
        for key, value in v.items():
            r = self.resolve(value)
            if r is not NO_VALUE:
                out[key] = r
        return out


def canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def has_null(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, list):
        return any(has_null(x) for x in v)
    if isinstance(v, dict):
        return any(has_null(x) for x in v.values())
    return False


class Report:
    """What the comparison found: checks that held, gaps of the emulator (what moto's
    CloudFormation does not apply, with how it is covered instead), and problems."""

    def __init__(self) -> None:
        self.verified: list[str] = []
        self.not_emulated: list[str] = []
        self.grouped_gaps: dict[str, list[str]] = {}
        self.repaired: dict[str, list[str]] = {}
        self.problems: list[str] = []

    def check(self, what: str, declared: Any, deployed: Any) -> bool:
        if canonical(declared) == canonical(deployed):
            self.verified.append(what)
            return True
        self.problems.append(f"{what}: the template declares {canonical(declared)}, the account has {canonical(deployed)}")
        return False

    def gap(self, what: str, resource: str | None = None) -> None:
        """What moto does not emulate; with `resource`, one line for all resources alike."""
        if resource is None:
            self.not_emulated.append(what)
        else:
            self.grouped_gaps.setdefault(what, []).append(resource)

    def repair(self, what: str, resource: str) -> None:
        """A deviation of moto's CloudFormation that would break the account, set right as
        CloudFormation does it (then compared like everything else)."""
        self.repaired.setdefault(what, []).append(resource)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verified": len(self.verified),
            "not_emulated": self.not_emulated + [_grouped(what, res) for what, res in self.grouped_gaps.items()],
            "repaired": [_grouped(what, res) for what, res in self.repaired.items()],
            "problems": self.problems,
        }


def _grouped(what: str, resources: list[str]) -> str:
    shown = ", ".join(resources[:3]) + (", ..." if len(resources) > 3 else "")
    return f"{what}: {len(resources)} resources ({shown})"


def placeholders(definition_text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z0-9]+)\}", definition_text))


def substitute(definition_text: str, substitutions: dict[str, str]) -> str:
    """What Step Functions does with DefinitionSubstitutions at create time."""
    missing = placeholders(definition_text) - set(substitutions)
    if missing:
        raise ValueError(f"the definition uses ${{{sorted(missing)[0]}}} and {len(missing) - 1} more placeholders no substitution defines")
    return re.sub(r"\$\{([A-Za-z0-9]+)\}", lambda m: substitutions[m.group(1)], definition_text)
