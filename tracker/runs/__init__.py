"""One measured run: its validated configuration, the session that opens and closes it, the
measured loop (load, warm up, query, score), and the user's own code measured as a run.
"""
