"""String rules stated once: Python checks them and JSON Schema states them, with one meaning.

A rule's `pattern` goes into the flow's parameter schema, where the Prefect server checks it
with Python's `re.search` before a flow run exists, and the UI's form shows it. Bodies use only
syntax that means the same in Python and in JavaScript: `[0-9]` rather than `\\d` (which in
Python also matches non-ASCII digits), no `\\w`, no `\\Z`, no inline flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
DNS_SUBDOMAIN = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
# Kubernetes' qualified-name part and label value: at most 63, alphanumeric at both ends.
K8S_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"


def anchored(body: str) -> str:
    """`body` as a whole-string pattern for `re.search` and JavaScript alike.

    Python's `$` also matches before a final newline; `(?!\\n)` closes that gap.
    """
    return f"^(?:{body})$(?!\\n)"


@dataclass(frozen=True)
class TextRule:
    """A string rule: a regex body, a length limit, and how to fix a value that breaks it."""

    body: str
    max_length: int
    fix: str

    @property
    def pattern(self) -> str:
        """The anchored pattern that the JSON schema carries."""
        return anchored(self.body)

    def json_schema(self) -> dict[str, Any]:
        """The rule in JSON Schema."""
        return {"type": "string", "pattern": self.pattern, "maxLength": self.max_length}

    def matches(self, value: str) -> bool:
        """Whether `value` keeps the rule; exactly what the JSON schema's check decides."""
        return len(value) <= self.max_length and re.search(self.pattern, value) is not None

    def check(self, value: str, field: str) -> str:
        """`value`, or a ValueError naming `field` and the fix."""
        if not self.matches(value):
            raise ValueError(f"{field} {value!r} is not valid: {self.fix}")
        return value

    def type(self, field: str) -> Any:
        """A `str` type that pydantic checks and whose JSON schema states the rule."""
        return Annotated[
            str,
            AfterValidator(lambda value: self.check(value, field)),
            WithJsonSchema(self.json_schema()),
        ]

    def stated(self) -> Any:
        """A `str` type whose JSON schema states the rule (the form and the server check it);
        the code using the value checks it with its own message (`matches`)."""
        return Annotated[str, WithJsonSchema(self.json_schema())]


# Prefect's block document names: lowercase letters, digits and dashes.
BLOCK_NAME = TextRule(
    r"[-a-z0-9]{1,200}",
    200,
    "use the block's name as the Prefect UI lists it: lowercase letters, digits and '-'",
)
# A flow run's id, as Prefect spells it.
RUN_ID = TextRule(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", 36, "give a flow run id"
)
BlockName = BLOCK_NAME.stated()
RunId = RUN_ID.stated()


def omit_null(schema: dict[str, Any]) -> None:
    """Show an optional field as the plain field it is: no `null` branch, no `null` default.

    The UI then shows an ordinary input to fill or leave empty (an empty field is omitted);
    the server still accepts an explicit `null` for a property without a default.
    """
    branches = schema.pop("anyOf", None)
    if branches is not None:
        (kept,) = [b for b in branches if b != {"type": "null"}]
        schema.update(kept)
    if "default" in schema and schema["default"] is None:
        del schema["default"]


def plain_optional_parameters(properties: dict[str, dict[str, Any]]) -> None:
    """Show each parameter defaulting to None as a plain field (`omit_null`), in place.

    Prefect wraps every flow parameter in a pydantic field of its own whose `json_schema_extra`
    it sets, so a parameter's annotation cannot drop the `null` branch: the deployment's
    schema is fixed once made. Without a default, the server still accepts an explicit `null`.
    """
    for prop in properties.values():
        if "default" in prop and prop["default"] is None:
            omit_null(prop)
