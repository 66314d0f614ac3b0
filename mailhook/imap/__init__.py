"""The IMAP door: the account and its connection, the folder watcher, its folders and fetches, and the door."""
