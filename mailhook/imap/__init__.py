"""The IMAP door: the account and its connection, the folder watcher, and the door that runs them."""
