"""ComfyUI 0.3.64's ``validate_prompt`` (execution.py): the 400 bodies a bad prompt gets.

The checks, their order and the error dicts are the real server's, so the harness sees the same
``error`` / ``node_errors`` here as from ComfyUI (see ``e_validation_errors.json``).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pytest_gemdirect.sim.comfyui.catalog import FILE_CHECKED_INPUTS
from pytest_gemdirect.sim.comfyui.errors import full_type_name

Reasons = list[dict[str, Any]]
Verdict = tuple[bool, Reasons, str]


@dataclass(frozen=True)
class Validation:
    """The outcome of one ``POST /prompt`` validation."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


def _error(kind: str, message: str, details: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _validate_node_input(received_type: Any, input_type: Any) -> bool:
    if not received_type != input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    if "*" in received or "*" in wanted:
        return True
    return bool(received & wanted)


def validate_prompt(
    prompt: Any,
    info: dict[str, Any],
    annotated_filepath: Callable[[str], tuple[str, str]],
    partial_targets: Iterable[str] | None = None,
) -> Validation:
    """Validate ``prompt`` against ``info`` (``/object_info``); LoadImage files are looked up on disk."""
    if not isinstance(prompt, dict):
        raise TypeError("prompt must be an object")
    targets = None if partial_targets is None else {str(t) for t in partial_targets}
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            message = "Cannot execute because a node is missing the class_type property."
            return Validation(False, _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {})
        class_type = node["class_type"]
        class_info = info.get(class_type) if isinstance(class_type, str) else None
        if class_info is None:
            message = f"Cannot execute because node {class_type} does not exist."
            return Validation(False, _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {})
        if class_info.get("output_node") is True and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {})
    return _Validator(prompt, info, annotated_filepath).outputs(outputs)


class _Validator:
    def __init__(
        self,
        prompt: dict[str, Any],
        info: dict[str, Any],
        annotated_filepath: Callable[[str], tuple[str, str]],
    ) -> None:
        self.prompt = prompt
        self.info = info
        self.annotated_filepath = annotated_filepath
        self.validated: dict[str, Verdict] = {}

    def outputs(self, outputs: list[str]) -> Validation:
        good_outputs: list[str] = []
        errors: list[tuple[str, Reasons]] = []
        node_errors: dict[str, Any] = {}
        for out in outputs:
            try:
                valid, reasons, _ = self.inputs(out)
            except Exception as ex:  # noqa: BLE001 - reported like the real server
                valid = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(ex),
                        "extra_info": {
                            "exception_type": full_type_name(type(ex)),
                            "traceback": traceback.format_tb(ex.__traceback__),
                        },
                    }
                ]
                self.validated[out] = (False, reasons, out)
            if valid is True:
                good_outputs.append(out)
                continue
            errors.append((out, reasons))
            for node_id, result in self.validated.items():
                if result[0] is not True and len(result[1]) > 0:
                    if node_id not in node_errors:
                        node_errors[node_id] = {
                            "errors": result[1],
                            "dependent_outputs": [],
                            "class_type": self.prompt[node_id]["class_type"],
                        }
                    node_errors[node_id]["dependent_outputs"].append(out)
        if not good_outputs:
            lines = [f"{e['message']}: {e['details']}" for _, errs in errors for e in errs]
            error = _error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines)
            )
            return Validation(False, error, [], node_errors)
        return Validation(True, None, good_outputs, node_errors)

    def inputs(self, unique_id: str) -> Verdict:
        """ComfyUI's validate_inputs for one node (and, through links, its ancestors)."""
        if unique_id in self.validated:
            return self.validated[unique_id]
        node = self.prompt[unique_id]
        inputs = node.setdefault("inputs", {}) if isinstance(node.get("inputs", {}), dict) else {}
        class_type = node["class_type"]
        class_info = self.info[class_type]
        class_inputs = class_info.get("input", {})
        order = class_info.get("input_order", {})
        valid_inputs: list[tuple[str, str]] = []
        for category in ("required", "optional"):
            names = order.get(category) or list(class_inputs.get(category, {}))
            valid_inputs += [(name, category) for name in names if name in class_inputs.get(category, {})]
        checked = [(name, why) for (cls, name), why in FILE_CHECKED_INPUTS.items() if cls == class_type]
        validate_function_inputs = [name for name, _ in checked]
        errors: Reasons = []
        valid = True
        for x, category in valid_inputs:
            definition = class_inputs[category][x]
            input_type = definition[0]
            extra_info = definition[1] if len(definition) > 1 and isinstance(definition[1], dict) else {}
            if x not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{x}",
                            "extra_info": {"input_name": x},
                        }
                    )
                continue
            input_config = [input_type, extra_info]
            if isinstance(inputs[x], list):
                valid = self._link(x, inputs[x], input_type, input_config, errors) and valid
            else:
                self._value(inputs, x, input_type, extra_info, x in validate_function_inputs, errors)
        for name, why in checked:
            if name in inputs and not isinstance(inputs[name], list):
                file, folder = self.annotated_filepath(str(inputs[name]))
                if not os.path.exists(os.path.join(folder, file)):
                    errors.append(
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": f"{name} - {why}: {inputs[name]}",
                            "extra_info": {"input_name": name},
                        }
                    )
        ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        self.validated[unique_id] = ret
        return ret

    def _link(
        self, x: str, val: list[Any], input_type: Any, input_config: list[Any], errors: Reasons
    ) -> bool:
        """A linked input; False when the linked node itself is invalid (the node is then invalid too)."""
        if len(val) != 2:
            errors.append(
                {
                    "type": "bad_linked_input",
                    "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    "details": f"{x}",
                    "extra_info": {"input_name": x, "input_config": input_config, "received_value": val},
                }
            )
            return True
        o_id = val[0]
        o_class_type = self.prompt[o_id]["class_type"]
        received_type = self.info[o_class_type]["output"][val[1]]
        if not _validate_node_input(received_type, input_type):
            errors.append(
                {
                    "type": "return_type_mismatch",
                    "message": "Return type mismatch between linked nodes",
                    "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                    "extra_info": {
                        "input_name": x,
                        "input_config": input_config,
                        "received_type": received_type,
                        "linked_node": val,
                    },
                }
            )
            return True
        try:
            return self.inputs(o_id)[0] is not False
        except Exception as ex:  # noqa: BLE001 - reported like the real server
            reasons = [
                {
                    "type": "exception_during_inner_validation",
                    "message": "Exception when validating inner node",
                    "details": str(ex),
                    "extra_info": {
                        "input_name": x,
                        "input_config": input_config,
                        "exception_message": str(ex),
                        "exception_type": full_type_name(type(ex)),
                        "traceback": traceback.format_tb(ex.__traceback__),
                        "linked_node": val,
                    },
                }
            ]
            self.validated[o_id] = (False, reasons, o_id)
            return False

    def _value(
        self,
        inputs: dict[str, Any],
        x: str,
        input_type: Any,
        extra_info: dict[str, Any],
        checked_by_node: bool,
        errors: Reasons,
    ) -> None:
        """A literal input: converted to its declared type, then checked against min, max and options."""
        input_config = [input_type, extra_info]
        try:
            val = _convert(inputs, x, input_type)
        except Exception as ex:  # noqa: BLE001
            val = inputs[x]  # unwrapped from {"__value__": ...}, not converted
            errors.append(
                {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {input_type} value",
                    "details": f"{x}, {val}, {ex}",
                    "extra_info": {
                        "input_name": x,
                        "input_config": input_config,
                        "received_value": val,
                        "exception_message": str(ex),
                    },
                }
            )
            return
        if checked_by_node:
            return
        error = _range_error(x, val, extra_info, input_config)
        if error is None:
            error = _combo_error(x, val, input_type, extra_info, input_config)
        if error is not None:
            errors.append(error)


def _convert(inputs: dict[str, Any], x: str, input_type: Any) -> Any:
    val = inputs[x]
    if isinstance(val, dict) and "__value__" in val:
        val = val["__value__"]
        inputs[x] = val
    converters: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
    convert = converters.get(input_type) if isinstance(input_type, str) else None
    if convert is not None:
        val = convert(val)
        inputs[x] = val
    return val


def _range_error(
    x: str, val: Any, extra_info: dict[str, Any], input_config: list[Any]
) -> dict[str, Any] | None:
    try:
        below = "min" in extra_info and val < extra_info["min"]
        above = "max" in extra_info and val > extra_info["max"]
    except TypeError:
        below = above = False
    if not below and not above:
        return None
    kind, message = (
        ("value_smaller_than_min", "Value {} smaller than min of {}".format(val, extra_info["min"]))
        if below
        else ("value_bigger_than_max", "Value {} bigger than max of {}".format(val, extra_info["max"]))
    )
    return {
        "type": kind,
        "message": message,
        "details": f"{x}",
        "extra_info": {"input_name": x, "input_config": input_config, "received_value": val},
    }


def _combo_error(
    x: str, val: Any, input_type: Any, extra_info: dict[str, Any], input_config: list[Any]
) -> dict[str, Any] | None:
    if not (isinstance(input_type, list) or input_type == "COMBO"):
        return None
    options = input_type if isinstance(input_type, list) else extra_info.get("options", [])
    if val in options:
        return None
    config: Any = input_config
    if len(options) > 20:
        list_info = f"(list of length {len(options)})"
        config = None
    else:
        list_info = str(options)
    return {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": f"{x}: '{val}' not in {list_info}",
        "extra_info": {"input_name": x, "input_config": config, "received_value": val},
    }
