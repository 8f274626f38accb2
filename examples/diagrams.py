"""Diagrams of the worked examples and of the lessons' MLP, written to out/.

    python examples/diagrams.py [OUTDIR]      # default: out/ at the top of the repository

For each picture an SVG (for the browser) and a PNG (for a quick look):

* ``chain_{forward,backward,joint,derivation}``: a = 2x, b = a + 3, c = b² at x = 1
  (dc/dx = 20);
* ``loss_{forward,backward,joint,derivation}``: L = (w·x − y)² at w = 2, x = 3, y = 10
  (dL/dw = −24);
* ``mlp_{forward,joint,collapsed,joint_collapsed}``: the 784-256-256-256-10 ReLU
  classifier, node by node and with each layer collapsed into one block;
* ``vanishing_sigmoid``: a 64-32×6-10 sigmoid network coloured by the size of its
  parameter gradients at initialization (pale: vanishing, red: large);
* ``flow_sigmoid_50``: the 50-hidden-layer sigmoid network ``mlp:64-64*50-10`` drawn with
  its ``sb.gradient_flow``: layers 2..50 in one cluster with a strip of one cell per layer.

Without Graphviz's ``dot`` program only the ``.dot`` files are written, and the
message says how to install it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import symbackprop as sb
from symbackprop.errors import GraphvizNotFoundError

OUT = Path(__file__).resolve().parent.parent / "out"


def diagrams() -> dict:
    """Name -> diagram, for every picture this script writes."""
    chain = sb.parse("a = 2*x; b = a + 3; c = b**2")
    loss = sb.parse("L = (w*x - y)**2")
    mlp = sb.models.mlp([784, 256, 256, 256, 10])
    out = {
        "chain_forward": sb.render(chain),
        "chain_backward": sb.render(chain, "backward", of="c", wrt="x"),
        "chain_joint": sb.render(chain, "joint", of="c", wrt="x"),
        "chain_derivation": sb.render(sb.derive(chain, of="c", wrt="x", at={"x": 1})),
        "loss_forward": sb.render(loss),
        "loss_backward": sb.render(loss, "backward", of="L", wrt="w"),
        "loss_joint": sb.render(loss, "joint", of="L", wrt="w"),
        "loss_derivation": sb.render(sb.derive(loss, of="L", wrt="w",
                                               at={"w": 2, "x": 3, "y": 10})),
        "mlp_forward": sb.render(mlp),
        "mlp_joint": sb.render(mlp, "joint"),
        "mlp_collapsed": sb.render(mlp, collapse=True),
        "mlp_joint_collapsed": sb.render(mlp, "joint", collapse=True),
    }
    # Vanishing gradients: the generated code's gradients at a random initialization.
    deep = sb.models.mlp([64] + [32] * 6 + [10], activation="sigmoid")
    arrays = sb.testing.random_inputs(deep, {"N": 64}, seed=0)
    _, grads = sb.compile(deep).value_and_grad(**arrays)
    out["vanishing_sigmoid"] = sb.render(
        deep, collapse=True, grads=grads,
        title="sigmoid network at initialization: max |∂L/∂W| shrinks ~4× per layer")
    # 50 layers stay legible: the repeated layers collapse into one cluster with a strip
    fifty = sb.models.mlp([64] + [64] * 50 + [10], activation="sigmoid")
    out["flow_sigmoid_50"] = sb.render(
        fifty, grads=sb.gradient_flow(fifty, batch=64),
        title="50 sigmoid layers at initialization: the gradient vanishes towards layer 1")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else OUT
    out.mkdir(parents=True, exist_ok=True)
    missing = None
    for name, diagram in diagrams().items():
        for ext in ("svg", "png"):
            try:
                sb.write_diagram(diagram, out / f"{name}.{ext}")
            except GraphvizNotFoundError as e:
                missing = e  # the .dot file is written; say it once at the end
                break
        print(f"  {out / name}.{'dot' if missing else 'svg/.png'}")
    if missing is not None:
        print(f"warning: {missing}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()  # no sys.exit: examples/demo.py runs this file with runpy
