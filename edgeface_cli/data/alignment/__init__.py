"""Photos -> aligned face crops: a face detector (MTCNN) and the similarity warp to the ArcFace template.

``detector`` is the interface (``Face``, ``Detector``, ``choose_faces``); ``mtcnn``/``mtcnn_nets`` the official
cascade with its shipped weights; ``warp`` the landmarks-to-crop transform; ``folder`` aligns a photo tree
incrementally (``edgeface align``); ``photos`` aligns photos in memory for every ``--align`` flag.
May import: the top-level modules (errors, atomic, preflight), ``data.image_files`` and ``data.folder`` (file
opening and decode wording), torch, numpy and PIL; nothing of model, evaluation, training, deploy or cli.
"""
