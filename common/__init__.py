"""What training, the server and the client share: the contract between them
(``common.contract``, ``common.idx``) and how their command lines read env vars
(``common.flags``). The standard library and numpy only, so that each side imports it
without the others' dependencies."""
