"""The board pack's stylesheet (print CSS, A4): no dependency, so the console serves it without
loading the drawing libraries."""

CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;color:#0b0c0c;max-width:60em;margin:1.5em auto;font-size:11pt}
h1{font-size:18pt}h2{font-size:14pt;border-bottom:2px solid #1d70b8;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:9pt}caption{text-align:left;font-weight:bold}
th,td{border:1px solid #b1b4b6;padding:2px 6px}td{text-align:right}td.c{background:#f3f2f1;font-style:italic}
tr.total{font-weight:bold}.note{font-size:8pt;color:#505a5f}img{max-width:100%}
.figure{page-break-inside:avoid;break-inside:avoid}
@page{size:A4;margin:15mm}
@media print{body{margin:0;max-width:none}h2{page-break-before:auto}.figure{page-break-inside:avoid}}
"""
