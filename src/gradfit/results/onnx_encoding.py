"""The column encoding in front of an exported ONNX graph: raw table columns in, the model's inputs out.

A category column (text, boolean, pandas category; data/encoding.py) becomes one string
input, named as the column, of shape (n,); each level but the reference becomes its
0/1 indicator ``COLUMN[T.LEVEL]`` (ONNX ``Equal`` on strings, then ``Cast``), as
``gradfit predict`` codes it. A level the model was not trained on gives NaN in every
indicator (so a NaN prediction), where ``gradfit predict`` refuses the row. Booleans are
the strings ``True``/``False``. A date column is a float64 input named ``COLUMN[days]``
(days since 1970-01-01 UTC: a graph cannot parse dates); numbers stay float64 inputs.
"""

from __future__ import annotations

PREFIX = "model/"  # the torch graph's names, once the encoding graph is in front of it


def _codes(columns: list):
    from gradfit.data.encoding import Encoding  # (imported here for start-up time)

    return Encoding.from_json({"columns": columns}).columns


def input_names(columns: list) -> list[str]:
    """The exported graph's inputs: category and number columns by name, dates as COLUMN[days]."""
    return [c.names[0] if c.kind == "date" else c.column for c in _codes(columns)]


def with_encoding(main, columns: list):
    """``main`` (inputs: the model's feature names) behind a graph that encodes the raw columns."""
    import onnx  # (imported here for start-up time)
    from onnx import TensorProto, helper

    nodes, inputs, outputs, inits = [], [], [], []
    inits.append(helper.make_tensor("enc/nan", TensorProto.DOUBLE, [], [float("nan")]))
    for k, c in enumerate(_codes(columns)):
        if c.kind != "category":  # a number, or a date's days: passed through
            src = c.names[0] if c.kind == "date" else c.column
            inputs.append(helper.make_tensor_value_info(src, TensorProto.DOUBLE, ["rows"]))
            nodes.append(helper.make_node("Identity", [src], [f"enc/{c.names[0]}"]))
            outputs.append(helper.make_tensor_value_info(f"enc/{c.names[0]}", TensorProto.DOUBLE, ["rows"]))
            continue
        inputs.append(helper.make_tensor_value_info(c.column, TensorProto.STRING, ["rows"]))
        eqs = []
        for i, level in enumerate(c.levels):
            const = f"enc/{k}/level{i}"
            inits.append(helper.make_tensor(const, TensorProto.STRING, [], [level.encode("utf-8")]))
            nodes.append(helper.make_node("Equal", [c.column, const], [f"enc/{k}/eq{i}"]))
            eqs.append(f"enc/{k}/eq{i}")
        known = eqs[0]
        for i, eq in enumerate(eqs[1:], start=1):
            nodes.append(helper.make_node("Or", [known, eq], [f"enc/{k}/known{i}"]))
            known = f"enc/{k}/known{i}"
        for i, name in enumerate(c.names, start=1):  # (levels[0] is the reference: no indicator)
            nodes.append(helper.make_node("Cast", [eqs[i]], [f"enc/{k}/ind{i}"], to=TensorProto.DOUBLE))
            nodes.append(helper.make_node("Where", [known, f"enc/{k}/ind{i}", "enc/nan"], [f"enc/{name}"]))
            outputs.append(helper.make_tensor_value_info(f"enc/{name}", TensorProto.DOUBLE, ["rows"]))
    pre = helper.make_model(helper.make_graph(nodes, "encoding", inputs, outputs, inits),
                            opset_imports=list(main.opset_import), ir_version=main.ir_version)
    body = onnx.compose.add_prefix(main, PREFIX, rename_outputs=False)
    io_map = [(f"enc/{n.name[len(PREFIX):]}", n.name) for n in body.graph.input]
    return onnx.compose.merge_models(pre, body, io_map=io_map)


def probe_feeds(columns: list, X):
    """Raw-column feeds for design probe rows X (n, d), whose indicator columns are set to the levels fed."""
    import numpy as np  # (imported here for start-up time)

    X = X.clone()
    feeds, j = {}, 0
    n = X.shape[0]
    for c in _codes(columns):
        if c.kind != "category":
            feeds[c.names[0] if c.kind == "date" else c.column] = X[:, j].numpy().copy()
            j += 1
            continue
        pick = np.arange(n) % len(c.levels)  # every level, the reference among them
        feeds[c.column] = np.array([c.levels[p] for p in pick], dtype=object)
        for i in range(1, len(c.levels)):
            X[:, j] = 0.0
            X[pick == i, j] = 1.0
            j += 1
    return feeds, X
