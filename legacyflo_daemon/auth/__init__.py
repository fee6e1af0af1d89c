"""Logging in without the users' passwords: OAuth 2.0 tokens and administrator impersonation.

``oauth2``: access tokens of the Microsoft identity platform (``msal``, client credentials),
one ``TokenProvider`` per application shared by every connection; ``admin``: the
administrator's password file of ``auth = "admin"``. Both register every secret they read or
obtain with ``runtime.secrets`` before anyone can see it. Layer: below ``imap`` (which sends
what these give), above ``runtime`` and ``config``.
"""
