output "server_public_ips" {
  value = aws_instance.server[*].public_ip
}

output "server_private_ips" {
  value = aws_instance.server[*].private_ip
}

output "client_public_ip" {
  value = aws_instance.client.public_ip
}

output "ssh_user" {
  value = "admin"
}

output "layout" {
  value = "${var.server_count} x ${var.server_instance_type} + 1 x ${var.client_instance_type} in ${var.availability_zone}, one cluster placement group"
}

output "region" {
  value = "${var.region} (${var.availability_zone})"
}
