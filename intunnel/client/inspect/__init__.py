"""The client's local inspector (issue 15): every exchange through the tunnel, kept on the laptop.

capture.py follows one visitor connection and records its exchanges into a bounded Store
(pure); server.py serves the page and the JSON API on loopback; replay.py sends a captured
request to the local app again; page.html is the page.
"""
