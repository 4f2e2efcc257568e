"""The DPIA pack: the flow map and the agreements register, built from the compiled agreements and
the party registry (pure: values in, values out; ``now`` is an argument, never the clock).

- ``facts.py``: what one flow releases, field by field, and an agreement's state at a moment;
- ``flowmap.py``: :class:`~broker.dpia.flowmap.FlowMap`, partners → flows (grouped by agreement)
  → consumers;
- ``register.py``: :class:`~broker.dpia.register.Register`, per agreement the facts a DPIA's
  data-flow section and the ICO data sharing code's checklist ask for;
- ``layout.py``: the map's geometry, shared by the SVG and PNG renderers so both draw one picture;
- ``render_map.py`` (SVG, DOT, Mermaid), ``render_png.py`` (matplotlib, Agg), ``render_register.py``
  (HTML, CSV, Markdown): strings or bytes, never files.

``sv-broker policy map`` and ``sv-broker policy register`` (``broker/commands/policy.py``) write
them as files; the IG console serves the same values.
"""
