"""The host's side: the runtime that turns the files a deploy wrote into kernel state and carries packets.

Runs on a host's python3 >= 3.9 from the zipapp; never imports pyinfra.
"""
