"""The one path: route, policy, transform, archive, deliver, observe; and the guards at its door."""
