"""Reconcile one FoundationModel: observe -> build desired -> plan -> apply -> status.

plan.py and status.py are pure; apply.py is the only module that writes to the API;
observe.py only reads; run.py composes them into the pass every handler calls.
"""
