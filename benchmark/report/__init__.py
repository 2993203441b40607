"""Reports rendered from stored results alone (never training): ``bench report``.

- :mod:`.significance` paired tests over users (t-test, bootstrap, sign-flip permutation, Holm);
- :mod:`.results` reads a suite's stored results and the optional robustness, diagnostics and
  sweep files (formats in ``docs/reports.md``);
- :mod:`.build` turns them into sections of tables, figures and provenance cards;
- :mod:`.document` writes the sections as HTML (self-contained), Markdown and LaTeX;
- :mod:`.plots` draws the figures (matplotlib + seaborn style, deterministic PNG bytes).

Entry point: :func:`benchmark.report.build.render_report`.
"""
